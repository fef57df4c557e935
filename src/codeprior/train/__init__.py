"""codeprior.train"""
