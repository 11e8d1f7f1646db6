"""The performance simulator (issue 7): predicted metrics of LLM deployment
configurations and the search for the best one. search.py explores a discrete
configuration space, exhaustively or with a genetic algorithm, over an evaluate
function the caller supplies. Import modules as models.simulator.<name>, with
the repository root on sys.path."""
