"""Operations: ``metrics`` (per-call latencies), ``validate`` (full check), ``export`` (export and import); statistics and health live on the backends."""
