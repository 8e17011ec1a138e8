"""Offline checks of swapstats' deployment files (chart, k8s/, compose, Tiltfile,
Dockerfile). Run with `bash scripts/check-deploy.sh`."""
