"""The orchestration wing: recipes over one plan.

    config.py    StudyConfig: sizes, seeds, parts, variants; the stages' sections under `base`
    ledger.py    the one guard: every cell recorded with its identity and the code that made it
    cells.py     the cell cache: shared data, models, samples, scores (layouts: study, demo)
    plan.py      the parts (scaling, ablations, entropy, frontier): their jobs and aggregation
    aggregate.py means over seeds, the paper's summary figures pooled over seeds
    verdict.py   the paper's bar
    results.py   the typed results and their JSON form
    report.py    the results page and its plots
    run.py       run_study (`anchorlm reproduce`) and run_demo (`anchorlm demo`)
    remote.py    a study trained and sampled on a borrowed GPU, scored here

The stages themselves (anchorlm.annotate, .data, .train, .sample, .evaluate, .report) know nothing
of this wing; it reads them.
"""
