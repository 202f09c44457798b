"""Files: atomic writes, safe checkpoint reading, the stage-1 -> stage-2 encoder hand-off, resume.

- :mod:`~maskrank.io.atomic`: writes a crash cannot truncate (temp file + fsync + rename);
- :mod:`~maskrank.io.checkpoint_io`: Lightning's checkpoint plugin on top of it;
- :mod:`~maskrank.io.checkpoints`: reading a checkpoint safely (``weights_only``), the encoder of
  a pretraining checkpoint;
- :mod:`~maskrank.io.resume`: ``--ckpt_path last`` and the run directory a resumed fit continues.
"""
