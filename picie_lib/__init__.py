"""PiCIE unsupervised semantic segmentation with CE, Focal and IB-Focal losses.

One module per idea of the paper: ``data`` (sources), ``transforms`` (the two views), ``model``
(ResNet-18 + FPN), ``clustering`` (mini-batch k-means), ``losses``, ``picie`` (PiCIE's epoch: the
passes, the loss, the IB-Focal switch), ``train`` (the loop, resume), ``metrics``, ``evaluate`` and
``compare`` (the paper's Table 2). ``config`` holds every parameter; ``loader`` reads the batches,
``checkpoints`` and ``runs`` keep a run's files, ``distributed`` joins torchrun's processes.
"""

__version__ = "0.1.0"
