"""The Warwick report's CIFAR-100 comparison: ResNet-18 and VGG-11.

Settings from M. Syrek, *The Optimisation of Gradient Descent* (University
of Warwick report) [W]: CIFAR-100 (50,000 training images, 100 classes,
random crop and horizontal flip: the dataset's augmentation here), 40 epochs
(§6.1), and its ten optimizers: SGD, Adam, RAdam, AMSGrad, Yogi, SVRG,
Lookahead, Ranger, KFAC and Shampoo. [W] dropped SVRG and Shampoo after
ResNet-18 for their memory and time cost (§6.1.1), so VGG-11 trains the
other eight, as in its Fig. 19 (``--optimizers`` overrides this). [W] states
no batch size, schedule, weight decay or seed: the batch size is 128 (our
choice), the schedule the task's (cosine), the learning rates the registry's
defaults (they are [W]'s best for SGD 0.01, Adam, Yogi and Ranger 0.001),
one seed (``--seeds`` for more). [W] reports test accuracy: CIFAR-100's test
split is evaluated once after the last epoch (``test_primary`` in
``summary.csv``). Needs CIFAR-100 in the local dataset cache
(``--data-dir``).

Try it small first::

  python experiments/warwick_cifar100.py --list
  python experiments/warwick_cifar100.py --configs resnet18 \\
      --optimizers sgd,adam --epochs 1 --max-samples 1000
"""
import sys

from optbench_jax import experiment
from optbench_jax.experiment import Configuration

OPTIMIZERS = ["sgd", "adam", "radam", "amsgrad", "yogi", "svrg", "lookahead",
              "ranger", "kfac", "shampoo"]
WITHOUT_SVRG_SHAMPOO = [o for o in OPTIMIZERS if o not in ("svrg", "shampoo")]

CIFAR100 = dict(task="image_classification", dataset="cifar100", epochs=40,
                batch_size=128)

CONFIGURATIONS = [
    Configuration("resnet18", **CIFAR100, model="resnet18"),
    Configuration("vgg11", **CIFAR100, model="vgg11",
                  optimizers=WITHOUT_SVRG_SHAMPOO),
]

if __name__ == "__main__":
  sys.exit(experiment.main(CONFIGURATIONS, OPTIMIZERS, sys.argv[1:],
                           script=__file__, description=__doc__))
