"""The local runtime: start and stop a platform on Ray on this machine (``runtime``), a
cluster of several Ray nodes on one machine (``cluster``) and the CPU session ``llmplat
serve`` runs in (``session``)."""
