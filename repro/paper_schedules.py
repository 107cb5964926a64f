"""Training schedules the paper states, shared by the recipes that use them.

``MNIST_PAPER``: supplement section 1.3, used for the MNIST experiments (distorted MNIST, MNIST
addition): SGD, lr 0.01 divided by 10 every 50k of 150k iterations, batch 256, three seeds. The
supplement gives no momentum; 0.9 is assumed (and recorded in every result through ``note``).
"""
from repro.harness import Profile

MNIST_PAPER = Profile("paper", steps=150_000, batch_size=256, lr=0.01, milestones=(50_000, 100_000), gamma=0.1,
                      optimizer="sgd", momentum=0.9, seeds=(0, 1, 2), log_every=500, ckpt_every=5000,
                      note="supplement 1.3 schedule; momentum 0.9 assumed")
