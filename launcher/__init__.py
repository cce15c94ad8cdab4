"""mxft's launch side: job files, planning, staging and running a distributed fine-tuning job.

Never imports mxnet: planning and staging work on a host without it.
"""
