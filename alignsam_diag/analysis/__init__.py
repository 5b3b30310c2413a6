"""Analyses: curvature (Hessian spectra), loss landscapes, gradient cosines, robustness."""
