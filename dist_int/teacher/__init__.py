"""teacher: score candidates, select the global teaching set, schedule ratio and interval."""

from .batches import BatchPlan, make_plan
from .schedules import interval_at, ratio_at, should_select
from .select import global_topk, hash_order, hash_uniform, order_keys, score_order
from .teacher import Teacher, TeachingSet, l1_error

__all__ = ["BatchPlan", "make_plan", "Teacher", "TeachingSet", "global_topk", "hash_order", "hash_uniform", "interval_at",
           "l1_error", "order_keys", "ratio_at", "score_order", "should_select"]
