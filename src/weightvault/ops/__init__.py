"""Operations on an unlocked repository: backup, restore, check, diff, stats, ls. One module each."""
