"""Gradient-descent family: SGD, heavy-ball momentum, Nesterov momentum.

Update rules (``g_t`` the gradient, ``η`` the learning rate)::

  sgd:           θ_{t+1} = θ_t − η g_t
  sgd_momentum:  m_t = μ m_{t−1} + g_t,  θ_{t+1} = θ_t − η m_t
                 (Polyak 1964; PyTorch's form, dampening 0)
  nesterov:      m_t = μ m_{t−1} + g_t,  θ_{t+1} = θ_t − η (g_t + μ m_t)
                 (Nesterov 1983; Sutskever et al. 2013, PyTorch's form)

All are ``optax.sgd``; weight decay is coupled L2 (PyTorch's ``weight_decay``).
"""
import optax

from optbench_jax.transforms import search
from optbench_jax.transforms.base import OptimizerSpec, configure, register

register(OptimizerSpec(
    name="sgd", factory=optax.sgd, family="gd", default_lr=0.01,
    optax_function=optax.sgd, weight_decay="coupled",
    paper="Robbins & Monro 1951, A Stochastic Approximation Method",
    reference="torch.optim.SGD"))

register(OptimizerSpec(
    name="sgd_momentum", factory=configure(optax.sgd, momentum=0.9),
    family="gd", default_lr=0.01, weight_decay="coupled",
    paper="Polyak 1964, Some methods of speeding up the convergence of "
          "iteration methods",
    reference="torch.optim.SGD(momentum=0.9)"))

register(OptimizerSpec(
    name="nesterov", factory=configure(optax.sgd, momentum=0.9, nesterov=True),
    family="gd", default_lr=0.01, weight_decay="coupled",
    search_space=search.algoperf(
        "nesterov", learning_rate=(2e-2, 5.0, "log"),
        momentum=(5e-3, 0.3, "log", True), weight_decay=(1e-7, 5e-5, "log")),
    paper="Sutskever et al. 2013, On the importance of initialization and "
          "momentum in deep learning (ICML)",
    reference="torch.optim.SGD(momentum=0.9, nesterov=True)"))
