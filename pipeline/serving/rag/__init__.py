"""Retrievers for RAG frameworks over the index: LangChain (langchain.py) and LlamaIndex (llamaindex.py), each over
the library in process (a Searcher) or over the search service (client.py). `pip install .[langchain]` or
`.[llamaindex]` brings the framework."""
