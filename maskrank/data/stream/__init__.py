"""Streaming shards (litdata): the on-disk layout, the conversion, the dataset and the datamodule.

* :mod:`~maskrank.data.stream.layout`: ``<root>/{train,val}`` chunks and ``maskrank.json``;
* :mod:`~maskrank.data.stream.optimize`: an ImageFolder or Hugging Face folder -> that layout;
* :mod:`~maskrank.data.stream.dataset`: decoded, cropped samples and a resumable loader;
* :mod:`~maskrank.data.stream.datamodule`: :class:`StreamingDataModule`.
"""
