"""margo-lite: the Margo device management client for constrained edge gateways."""

__version__ = "0.1.0"
