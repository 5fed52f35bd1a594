"""``python -m alliance.masks``: print the mask costs (docs/masks.md)."""
from alliance.masks.measure import _measure

_measure()
