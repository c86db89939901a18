"""Readers that turn the common caption-dataset layouts into `CaptionedSplit`s.

Every reader returns captions grouped by image in image order, with image
paths made absolute by joining them onto the image folder. Supported layouts:

* Flickr8k (`read_flickr8k`): ``Flickr8k.token.txt`` or ``captions.txt`` plus
  the ``Flickr_8k.{train,dev,test}Images.txt`` split lists.
* Karpathy JSON (`read_karpathy`): ``dataset_{coco,flickr8k,flickr30k}.json``.
* MS-COCO (`read_coco`): ``annotations/captions_{train,val}2014.json``.
* VSE++ precomputed features (`read_precomp`): ``{split}_ims.npy`` plus
  ``{split}_caps.txt``.
* A plain CSV/TSV with ``image`` and ``caption`` columns (`read_caption_csv`).

`read_split` dispatches on a dataset name.

Validation: every reader checks every row or record (UTF-8, column counts,
JSON schema, empty captions, image paths that are absolute or escape the data
root, split lists naming unknown images, repeated images, duplicate
``(image, caption)`` pairs and, with ``check_files``, missing image files) and
reports *all* problems in one `DataError` (``error.problems`` holds each as a
`Problem` with file, line, byte offset and kind). When the file that defines
the requested split is absent the error is a `MissingSplitError` (a
`DataError`; see its docstring for the cases). With
``skip_bad_examples=True`` the bad rows (and images left without captions)
are left out instead and counted on the split's ``skipped``; problems that
make a whole file unusable (missing files, a bad header, JSON that does not
parse or is not the expected schema, unusable features) raise either way.
Duplicate ``(image, caption)`` pairs are only warnings (``split.warnings``)
unless skipping: the official Flickr8k captions hold nine of them.
"""

from vse_tf.data.readers.caption_csv import read_caption_csv
from vse_tf.data.readers.coco import read_coco
from vse_tf.data.readers.common import PathLike
from vse_tf.data.readers.dispatch import DATASETS, read_split
from vse_tf.data.readers.flickr8k import (
    FLICKR8K_IMAGE_DIRS,
    FLICKR8K_SPLITS,
    read_flickr8k,
)
from vse_tf.data.readers.karpathy import (
    KARPATHY_FILE_SPLITS,
    KARPATHY_SPLITS,
    read_karpathy,
)
from vse_tf.data.readers.precomp import read_precomp
from vse_tf.data.split import CaptionedSplit, DataError, MissingSplitError, Problem

__all__ = [
    "DATASETS",
    "FLICKR8K_IMAGE_DIRS",
    "FLICKR8K_SPLITS",
    "KARPATHY_FILE_SPLITS",
    "KARPATHY_SPLITS",
    "CaptionedSplit",
    "DataError",
    "MissingSplitError",
    "PathLike",
    "Problem",
    "read_caption_csv",
    "read_coco",
    "read_flickr8k",
    "read_karpathy",
    "read_precomp",
    "read_split",
]
