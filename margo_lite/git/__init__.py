"""The parts of the Git source (`margo_lite.gitsource`): the smart HTTP protocol, local
repositories as remotes, the local object store, commit signatures."""
