"""Operations: metrics (this module's ``metrics``); statistics and health live on the backends."""
