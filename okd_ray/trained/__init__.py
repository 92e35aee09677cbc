"""What a run produces, as models: load any member, the ensemble, the fused classifier or ONE's teacher
(``load.py``), evaluate a checkpoint (``evaluate.py``, ``okd-ray eval``), export it with a model card
(``export.py``, ``card.py``, ``okd-ray export``)."""
