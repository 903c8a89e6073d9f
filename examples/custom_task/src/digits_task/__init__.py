"""An example shieldtune task plug-in, outside shieldtune's own source tree.

Name it in a config as ``task: {entry_point: "digits_task:make_task", kwargs: {...}}``.
"""

from digits_task.task import DigitsTask, make_task

__all__ = ["DigitsTask", "make_task"]
