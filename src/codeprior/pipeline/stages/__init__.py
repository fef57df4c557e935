"""One module per codeprior stage: its ``run`` function, its typed outputs record and the ``FILES`` it writes."""
