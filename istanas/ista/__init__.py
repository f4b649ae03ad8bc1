"""ISTA-NAS: sparse recovery (Eq. 9), the compressed space (Eq. 11), Algorithm 1 (two-stage), Algorithm 2
(one-stage) and the BN absorption of Eq. 12."""
