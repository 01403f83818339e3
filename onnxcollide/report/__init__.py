"""Renderers: audit formats (one module per format behind one small interface), the collide
report, PNG pictures, and the atomic writing of every file.

Adding a format touches one module and the ``Format`` enum; tests check every value renders.
"""
