"""What every run needs: flow parameters, the settings check, progress, fan-out, set-up."""
