"""TKP-PCL: top-K pooling with patch contrastive learning for weakly-supervised segmentation.

Plain PyTorch. The API the harness uses: :func:`tkp_pcl.train.train_stage1` (with an epoch
callback), :func:`tkp_pcl.pseudo.make_pseudo_labels`, :func:`tkp_pcl.metrics.miou`, and the
configuration models of :mod:`tkp_pcl.config`.
"""

__version__ = "0.1.0"
