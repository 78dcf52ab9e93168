"""LOST pseudo-boxes as detector training labels: COCO, detectron2, YOLO and VOC.

:mod:`lostreg.export.formats` holds the writers (prediction records in, files out; no run
directory I/O), :mod:`lostreg.export.readers` reads label files back to pixel boxes and
reads eval run directories. ``lostreg export`` (:mod:`lostreg.cli.export_cmd`) ties them
together. Box convention: ``(x1, y1, x2, y2)`` integer pixels, max exclusive.
"""

from lostreg.export.formats import (
    CATEGORY_NAME,
    FILE_FORMATS,
    FORMATS,
    ExportError,
    ExportResult,
    FailedImage,
    coco_instances,
    coco_results,
    detectron2_dicts,
    export_records,
    select_objects,
    voc_xml,
    write_coco,
    write_detectron2,
    write_voc,
    write_yolo,
    yolo_line,
)
from lostreg.export.readers import (
    ImageLabels,
    LabelBox,
    RunNotFoundError,
    VocLabels,
    default_root,
    parse_yolo_line,
    read_coco_json,
    read_detectron2_file,
    read_run_config,
    read_run_predictions,
    read_voc_xml,
    read_yolo_txt,
    yolo_label_files,
)

__all__ = [
    "CATEGORY_NAME",
    "FILE_FORMATS",
    "FORMATS",
    "ExportError",
    "ExportResult",
    "FailedImage",
    "ImageLabels",
    "LabelBox",
    "RunNotFoundError",
    "VocLabels",
    "coco_instances",
    "coco_results",
    "default_root",
    "detectron2_dicts",
    "export_records",
    "parse_yolo_line",
    "read_coco_json",
    "read_detectron2_file",
    "read_run_config",
    "read_run_predictions",
    "read_voc_xml",
    "read_yolo_txt",
    "select_objects",
    "voc_xml",
    "write_coco",
    "write_detectron2",
    "write_voc",
    "write_yolo",
    "yolo_label_files",
    "yolo_line",
]
