"""Tools for developing against margo-lite, never imported by the agent: the WOS/WFM
simulator, test identities and `margo-lite demo`."""
