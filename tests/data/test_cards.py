"""Every dataset that downloads states its card's licence and sizes."""
from optbench_jax import data, tasks
from optbench_jax.data import cards


def _downloads():
  for task in tasks.TASKS.names():
    for name in data.names_for(task):
      download = getattr(data.get(task, name), "download", None)
      if download is not None:
        yield name, download


def test_every_download_has_its_card_facts():
  missing = [name for name, d in _downloads() if cards.facts(d.origin) is None]
  assert not missing, f"add their cards to data/cards.py: {missing}"
  unused = set(cards.FACTS) - {d.origin for _, d in _downloads()}
  assert not unused, unused


def test_card_facts_read_as_words():
  assert cards.facts("ylecun/mnist").sizes() == "11.6 / 20.4 MB"
  assert cards.facts("bbaaaa/iwslt14-de-en").sizes() == "not stated"
  assert all(f.licence and f.source for f in cards.FACTS.values())
