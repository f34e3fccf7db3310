"""Stage 2: classifiers that turn a case into P(abnormal), behind one interface.

Kinds: ``hexanet`` (one Mini-ResNet branch per detected region), ``whole-image`` (the
baseline), ``head-crop`` (the head detector's crop). Train with
:func:`~neurosono.classify.train.train_classifier`, load any with
:func:`~neurosono.classify.kinds.load_classifier`, cross-validate with
:func:`~neurosono.classify.crossval.cross_validate`.
"""
