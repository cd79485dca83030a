"""teacher: score candidates, select the global teaching set, schedule ratio and interval."""

from .batches import BatchPlan
from .schedules import interval_at, ratio_at, should_select
from .select import global_topk, hash_uniform
from .teacher import Teacher, l1_error

__all__ = ["BatchPlan", "Teacher", "global_topk", "hash_uniform", "interval_at", "l1_error", "ratio_at",
           "should_select"]
