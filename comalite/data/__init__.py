"""Data in the MMEB layout, one idea per module.

- ``io``: readers of MMEB-train / MMEB-eval files and the stage-1 dialogue jsonl, with errors that name the
  file, row and field; ``writers``: the same formats written (atomically);
- ``images``: opening image files, bounded in size, failures named with the file and row that use them;
- ``sources``: the data source a config names (a registered ``DataSource``: local MMEB copies here,
  ShapesWorld's in ``comalite.shapesworld.source``, built on first use) -> its folders and records;
- ``check``: a report on a local MMEB folder (every dataset, column and image present?).

Stage-1 dialogues written by a VLM live above this package, in ``comalite.stage1_data`` (it loads a model).
"""
