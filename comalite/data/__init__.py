"""Data in the MMEB layout, one idea per module.

- ``io``: readers and writers of MMEB-train / MMEB-eval files and the stage-1 dialogue jsonl, with errors
  that name the file, row and field;
- ``images``: opening image files, bounded in size, failures named with the file and row that use them;
- ``sources``: a config -> its folders and records (ShapesWorld built on first use, or local MMEB copies);
- ``check``: a report on a local MMEB folder (every dataset, column and image present?);
- ``dialogues``: stage-1 QA dialogues for real images, from annotations or written by a VLM.
"""
