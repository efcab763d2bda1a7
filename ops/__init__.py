"""Operations tools: the `banksync` command and the live dashboard."""
