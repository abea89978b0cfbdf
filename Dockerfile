# GPU image: vLLM's official OpenAI server image with adaptserve in front of it.
# Not buildable on the CPU machines adaptserve is developed on; see README.
FROM vllm/vllm-openai:v0.32.0

RUN useradd --create-home --uid 1000 adaptserve
WORKDIR /opt/adaptserve
COPY pyproject.toml README.md ./
COPY src ./src
COPY clients/python ./clients/python
# vllm is already in the image; install the client package (the CLI uses it), then
# only the gateway's own dependencies.
RUN pip install --no-cache-dir ./clients/python . && mkdir -p /data && chown adaptserve /data

USER adaptserve
ENV ADAPTSERVE_DATA_DIR=/data \
    ADAPTSERVE_HOST=0.0.0.0 \
    ADAPTSERVE_PORT=8000 \
    ADAPTSERVE_BASE_VIA_ZERO_ADAPTER=false
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
ENTRYPOINT ["adaptserve", "serve"]
CMD ["--model", "/models/base"]
