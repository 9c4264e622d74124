"""Teacher-signal extraction: load a teacher, run it, hand numpy to the store.

`import teacher_dump` does not import Beam; `TeacherModelHandler` is loaded
on first access so trainer-side and test code stay light.
"""
from teacher_dump.extract import make_extract_fn
from teacher_dump.loop import extract_rows
from teacher_dump.teacher import Teacher, load_teacher

__all__ = ["load_teacher", "make_extract_fn", "extract_rows", "Teacher",
           "TeacherModelHandler"]


def __getattr__(name):
    if name == "TeacherModelHandler":
        from pipelines.teacher_handler import TeacherModelHandler
        return TeacherModelHandler
    raise AttributeError(f"module 'teacher_dump' has no attribute {name!r}")
