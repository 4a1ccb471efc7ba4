"""The binding event contract of DESIGN §3: envelope, subjects, streams and payload models."""

from . import case, catalogue, common, directory, dispatch, intake, mediation, stats, subjects
from .envelope import Envelope, RawEvent, new_id
from .replies import error, ok

__all__ = [
    "Envelope",
    "RawEvent",
    "case",
    "catalogue",
    "common",
    "directory",
    "dispatch",
    "error",
    "intake",
    "mediation",
    "new_id",
    "ok",
    "stats",
    "subjects",
]
