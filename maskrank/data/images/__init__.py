"""Images as uint8 tensors: decoding files and encoded bytes, crop boxes, batched augmentation.

* :mod:`~maskrank.data.images.crops`: crop boxes in an image's original pixels, from a seed;
* :mod:`~maskrank.data.images.decode`: encoded bytes or a file -> one square uint8 crop;
* :mod:`~maskrank.data.images.encoded`: the training and held-out crops of one encoded image;
* :mod:`~maskrank.data.images.files`: whole files decoded (and cached) for in-memory folders;
* :mod:`~maskrank.data.images.file_crops`: a dataset of files cropped in the loader workers;
* :mod:`~maskrank.data.images.augment`: batched crops and flips of normalized images on the device.
"""
