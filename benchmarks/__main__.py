from .mine_vs_forward import main

if __name__ == "__main__":
    raise SystemExit(main())
