FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot bot
COPY commands commands
COPY rooms rooms
COPY storage storage
COPY domain domain
COPY data data
RUN pip install --no-cache-dir .
USER 1000
CMD ["cercle", "run", "--config", "/config/cercle.toml"]
