"""The phantom: synthetic TV/TC heads with boxes, findings and true measurements (``neurosono synth``)."""
