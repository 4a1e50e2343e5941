"""The contender a user already runs: the standard past-KV decoder, cache cut at the first changed token."""
