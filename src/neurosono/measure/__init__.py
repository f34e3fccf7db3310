"""Biometry: the head's measurements in mm, their centiles for age, and finding hints.

* :mod:`~neurosono.measure.standards`: the published reference standards (INTERGROWTH-21st
  HC, BPD, OFD and TCD; dating from the HC) and the fixed clinical limits.
* :mod:`~neurosono.measure.headnet` and :mod:`~neurosono.measure.head`: the head model (a
  U-Net outlining the skull's outer and inner borders) and the ellipse measurements.
* :mod:`~neurosono.measure.hints`: one rule per finding.
* :mod:`~neurosono.measure.case`: :class:`~neurosono.measure.case.Measurer`, a case's
  biometry from its images; :mod:`~neurosono.measure.train`: training the head model.
"""
