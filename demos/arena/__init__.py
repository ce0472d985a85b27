"""The peng3dnet arena: a small multiplayer game synced with peng3dnet.ext.sync.

Run ``python -m demos.arena --help``.
"""
