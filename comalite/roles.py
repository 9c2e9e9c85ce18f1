"""The role of every token position, the one vocabulary that sequences, the mask and pooling share.

``comalite.sequence`` gives each position a role as it builds an input; ``comalite.mask`` decides from the
roles who may attend to whom; ``comalite.pooling`` pools the ``COMPRESS`` positions. A leaf module: it
imports nothing, so everything can depend on it.
"""
PAD, CONTEXT, COMPRESS, QUESTION, ANSWER = -1, 0, 1, 2, 3
ROLE_NAMES = {PAD: "pad", CONTEXT: "context", COMPRESS: "compress", QUESTION: "question", ANSWER: "answer"}
