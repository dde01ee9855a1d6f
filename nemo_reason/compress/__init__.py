"""Model compression: pruning targets and budgets (:mod:`.targets`), Minitron pruning with modelopt
(:mod:`.minitron`), the importance report (:mod:`.importance`), distillation losses (:mod:`.distill`,
used by the ``distill`` step). The ``prune`` step (:mod:`nemo_reason.stages.prune`) composes the first three."""
