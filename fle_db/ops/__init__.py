"""Operations: ``metrics`` (per-call latencies), ``validate`` (full check), ``backup`` (backups,
point-in-time recovery, copies), ``export`` (export and import); statistics and health live on the
backends."""
