"""Hugging Face ``datasets`` image classification data: finding splits and columns, the datamodule.

* :mod:`~maskrank.data.hf.source`: load the splits, find the image and label columns, class names;
* :mod:`~maskrank.data.hf.datamodule`: :class:`HFDataModule`.
"""
