"""``python -m energyat_core`` runs the CLI (this is what ``torchrun`` starts)."""

from energyat_core.cli import main

if __name__ == "__main__":
    main()
