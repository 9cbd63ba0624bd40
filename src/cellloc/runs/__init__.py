"""Folder-level runs: the only code that lists folders, writes files, resumes and maps over fields.

Each module is one stage run over a folder: ``segment`` (fields -> masks, crops, cells table),
``folds`` (tables -> folds CSV and balance report), ``train`` (a folds table -> a model run
folder), ``predict`` (test fields + a model run -> submission), ``score_segmentation`` and
``report``. They call the per-field core (:mod:`cellloc.pipeline`), the classifiers
(:mod:`cellloc.classifier`) and the pure modules; a web service or a cluster worker calls those
directly, never this package.
"""
