"""Zero-resource evaluation: sWUGGY, sBLIMP, tSC/sSC, ABX, PNMI, and the paper-style report."""
