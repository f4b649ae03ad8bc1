"""TE-NAS (Chen, Gong & Wang, ICLR 2021): ``indicators`` (kappa_N, R_N, combined score), ``proxies`` (masked proxy
super-nets), ``pruning`` (the prune-by-importance rounds), ``job`` (configs, ``tenas_search``, ``run_job``)."""
