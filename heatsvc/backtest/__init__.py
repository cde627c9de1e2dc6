"""`heatsvc backtest`: how well the heatmap matched what happened (MODEL.md section 15).

scoring (pure scores, bootstrap, magnet test), truth (what happened: realised liquidations or the
OI-destroyed proxy), sensitivity (the declared tier mixes), run (the evaluation loop and its
summary), report (markdown, JSON, plots), cli (the command).
"""
